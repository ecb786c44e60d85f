"""Dataset and model cards: Jinja templates (`templates/`, package data) filled from a run."""
