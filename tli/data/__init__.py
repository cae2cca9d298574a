"""Lexicons, their audit, and the LightningDataModule serving translation pairs."""
