"""Label CSVs, image datasets, transforms and samplers for camera pose regression."""
