"""The LightningModule and its contrastive losses."""
