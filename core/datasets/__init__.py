"""Dataset ingestion: labelling rules, manifests, versions and the sample datasets."""
