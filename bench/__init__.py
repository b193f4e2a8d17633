"""Performance goals (``make bench``): each module's ``run()`` returns a dict of figures and targets."""
