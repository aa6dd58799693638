"""Reports of a run directory: statistics (``stats``), tables (``tables``) and figures (``figures``)."""
