"""Training data: procedural faces with exact attribute labels (`synthfaces`) and the image
datasets every trainer reads (`datasets.ImageDataset`: folders, dataset zips, CelebA)."""
