"""Query time: the user store, personalization, recommending, scoring, active questioning."""
