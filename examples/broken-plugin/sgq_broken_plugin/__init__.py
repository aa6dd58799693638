"""A plugin that fails to import, on purpose: sgq-bench must survive it and name it."""

raise RuntimeError("sgq-bench-broken-plugin is broken on purpose")
