"""Code written the way outside projects write it, for advtrain to be tested against.

Nothing here imports advtrain: these are "someone else's" LightningModules and DataModules
(lightning-hydra-template's layout with ``lightning`` imports; a ``pytorch_lightning`` project in
the style of Lightning's own examples), on images served the way torchvision serves them (PIL
images through ``Compose([ToTensor(), Normalize(...)])``).
"""
