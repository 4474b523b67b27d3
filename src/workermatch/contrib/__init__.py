"""Integrations with frameworks, each an optional extra: ``workermatch.contrib.django`` (the
``django`` extra: from a checkout, ``python -m pip install '.[django]'``).  The package root
never imports them."""
