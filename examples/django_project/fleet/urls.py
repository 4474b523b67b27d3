from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("assignments/<str:assignment_id>/claim", views.claim, name="claim"),
    path("heartbeat", views.heartbeat, name="heartbeat"),
    path("gui-update", views.gui_update, name="gui-update"),
]
