"""simclr_vision: SimCLR pretraining of a product-image encoder whose frozen h describes products.

Uses `twotower.contrastive.nt_xent` and `twotower.heads.ProjectionHead`; see DESIGN.md.
"""
