"""Finding white cells in a microscope field: the detector bundle's spec, its decoding, the crop rule,
Pascal VOC annotations, the evaluation (AP), the classical baseline. NumPy + OpenCV only (device side).

    spec.py       what a detector bundle's manifest says: outputs, stride, threshold, crop rule
    decode.py     heat map + box distances -> boxes in the image's own pixels (peaks, NMS)
    detector.py   a detector bundle + backend + preprocessing, one frame at a time
    classical.py  the baseline: nucleus colour threshold + connected components
    crop.py       a detected box -> the square crop the classifier expects
    voc.py        Pascal VOC frames and boxes, their quirks, the train/val split
    evaluate.py   AP@0.5, AP@0.5:0.95, precision / recall at a threshold, false positives per frame
    pr_plot.py    the precision-recall curve as a PNG (OpenCV, no matplotlib)
"""
