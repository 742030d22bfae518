"""The paper's experiments in miniature, and the quick-start demo.

- ``plan``: which runs each experiment needs, and the analysis of records.
- ``runs``: one run trained and evaluated, as a JSON record.
- ``report``: the report, tables and plots from the records.
- ``demo``: the quick-start job (pre-train and evaluate a small model).
"""
