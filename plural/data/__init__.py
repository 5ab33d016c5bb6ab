"""Preference data: the columnar container, converters, splits and the bundled datasets."""

from plural.data.bundled import DATASETS, load
from plural.data.container import PreferenceData, check_features
from plural.data.converters import (from_file, from_hf_dataset, from_pandas, from_rankings, from_ratings,
                                    from_trl, from_votes, read_table)
from plural.data.splits import (ComparisonSplit, Episode, make_episodes, split_comparisons,
                                split_users)

__all__ = [
    "DATASETS", "ComparisonSplit", "Episode", "PreferenceData", "check_features", "from_file",
    "from_hf_dataset", "from_pandas", "from_rankings", "from_ratings", "from_trl", "from_votes",
    "load", "make_episodes", "read_table", "split_comparisons", "split_users",
]
