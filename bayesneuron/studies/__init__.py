"""Studies layer: study configs (``config``: the TOML schema; ``experiment``: a design's
synthetic experiment), the runners that turn them into results folders (``run``: MAP fits and
Laplace analyses; ``posteriors``: the ``[[infer]]`` posteriors; ``report``: ``report.html``),
their tables (``tables``: columns named after the model's free parameters; ``ranking``;
``output``: CSV, JSON and the environment manifest) and the executors that spread designs over
processes or a Dask cluster."""
