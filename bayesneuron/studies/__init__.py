"""Studies layer: study configs (TOML schema), the runners that turn them into results folders,
and the executors that spread designs over processes or a Dask cluster."""
