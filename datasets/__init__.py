"""Dataset manifests and name lists, shipped as package data (`spmctl_datasets`).

`names.json` holds UnlearnCanvas's 50 styles (in the benchmark classifier's label
order, `Seed_Images` left out since it is not a style), its 20 object classes
and I2P's 7 categories.
"""
