"""Integrations with frameworks, each an optional extra: ``workermatch.contrib.django``
(``pip install workermatch[django]``).  The package root never imports them."""
