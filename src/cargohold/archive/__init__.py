"""Image archives: OCI image layouts and docker-archives, read in place or as a stream
(files, formats, names), as a content source for fetch / bake / plan (source), imported
(importer) and written (export)."""
