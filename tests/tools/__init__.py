"""The tools a user runs: the ``workermatch`` command and the shipped corpus of traces."""
