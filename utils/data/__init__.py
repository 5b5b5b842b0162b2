"""Datasets in the VOC layout: reading, checking, transforming and loading image/label pairs.

- :mod:`~utils.data.io`: image, label and class-list reading and writing; VOC classes, palette, constants.
- :mod:`~utils.data.layout`: the VOC folder layout, split files, the image index.
- :mod:`~utils.data.transforms`: the letterbox and the training augmentation.
- :mod:`~utils.data.crop`: crop training (``--crop-size``): random rescale, crop with ``cat_max_ratio``, pad.
- :mod:`~utils.data.dataset`: :class:`~utils.data.dataset.SegmentationDataset`.
- :mod:`~utils.data.loader`: seeded loaders, samplers, worker seeding, moving batches to the device.
- :mod:`~utils.data.label_map`: ``--label-map`` value remapping applied as labels are read.
- :mod:`~utils.data.checks`: ``voc_annotation.py``'s split writing, dataset checks and label fixes.
- :mod:`~utils.data.labelme`: importing labelme annotations.
- :mod:`~utils.data.cityscapes`: importing Cityscapes; its id table is ``label_maps/cityscapes.txt``.
- :mod:`~utils.data.demo`: the synthetic demo dataset.
"""
