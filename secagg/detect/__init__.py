"""IoT intrusion data, detectors and detection metrics.

Public API::

    from secagg.detect import load_dataset, prepare, partition, make_detector

    ds = load_dataset("cicids2017")            # or iot23 / nbaiot; path=... for your own files
    data = prepare(ds, seed=0)                  # stratified split; scaler fitted on train only
    parts = partition(data.y_train, 10, "dirichlet", alpha=0.5, groups=data.groups_train)
    det = make_detector("ae", ds.n_features, seed=0)
    det.train_epochs(data.X_train, data.y_train, epochs=20)
    det.calibrate(data.X_val, data.y_val, percentile=95)
    print(det.evaluate(data.X_test, data.y_test))

Modules: :mod:`.dataset` (Dataset, default_data_dir), :mod:`.loaders`, :mod:`.preprocess`
(split, scaler), :mod:`.partition`, :mod:`.models` (Detector and its four implementations),
:mod:`.metrics`. See docs/detect.md.
"""

from secagg.detect.dataset import Dataset, default_data_dir
from secagg.detect.loaders import DATASETS, load_cicids2017, load_dataset, load_iot23, load_nbaiot
from secagg.detect.metrics import best_f1_threshold, detection_metrics, roc_auc, threshold_at_percentile
from secagg.detect.models import (
    DETECTORS,
    AutoencoderDetector,
    CNNDetector,
    Detector,
    LSTMDetector,
    MLPDetector,
    make_detector,
)
from secagg.detect.partition import SCHEMES, partition
from secagg.detect.preprocess import Prepared, Split, StandardScaler, prepare, train_val_test_split

__all__ = [
    "DATASETS", "DETECTORS", "SCHEMES",
    "Dataset", "default_data_dir",
    "load_cicids2017", "load_dataset", "load_iot23", "load_nbaiot",
    "best_f1_threshold", "detection_metrics", "roc_auc", "threshold_at_percentile",
    "AutoencoderDetector", "CNNDetector", "Detector", "LSTMDetector", "MLPDetector", "make_detector",
    "partition",
    "Prepared", "Split", "StandardScaler", "prepare", "train_val_test_split",
]
