"""Metrics for distributions of segmentations (Kohl et al. 2018, section 3.1 and appendix B).

Conventions (DESIGN section 5):

- The distance between two label maps is `d = 1 - IoU`. With two classes, IoU is that of the
  foreground class 1: both masks empty gives d = 0, one empty d = 1. With more classes, d is one
  minus the mean IoU over the scored classes (all K, or a given subset) present in either map;
  classes absent from both are skipped, and d = 0 when no scored class is present in either
  (`empty_pair=1.0` gives d = 1 there, as D-Persona's code does; PHiSeg's code instead counts a
  class absent from both as IoU 1 and divides by all K, which differs from this for K > 2 only).
  Pixels labelled 255 in either map are left out of that pair's comparison.
- `D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]` per image, every expectation the mean over
  all pairs, self-pairs included (as the official evaluation does). The annotation side can be
  weighted by known mode probabilities instead of counting each annotation once.

The numpy functions are the reference; `GeneralizedEnergyDistance` is the same computation in
TensorFlow, as a Keras metric that `ProbabilisticUNet.test_step` updates (`val_ged`).

Modules: `distances.py` (d, GED, HM-IoU), `modes.py` (mode and flip frequencies),
`calibration.py` (PHiSeg's NCC, the expected calibration error, sample diversity),
`uncertainty.py` (uncertainty maps), `keras_metrics.py` (the TensorFlow GED and its Keras
metric).
"""

from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.metrics.calibration import (calibration_bins, calibration_error,
                                            expected_calibration_error,
                                            normalized_cross_correlation, sample_diversity)
from tfprobunet.metrics.distances import (HM_IOU_FORMS, energy_distance,
                                          generalized_energy_distance, hungarian_iou, matched_iou,
                                          pairwise_distances, scored_classes)
from tfprobunet.metrics.keras_metrics import (GeneralizedEnergyDistance,
                                              generalized_energy_distance_tf,
                                              pairwise_distances_tf)
from tfprobunet.metrics.modes import (assign_modes, flip_counts, flip_frequencies, flip_pairs,
                                      log_pearson_r, mode_frequencies)
from tfprobunet.metrics.uncertainty import uncertainty_maps

__all__ = ["HM_IOU_FORMS", "IGNORE_LABEL", "GeneralizedEnergyDistance", "assign_modes",
           "calibration_bins", "calibration_error", "energy_distance",
           "expected_calibration_error", "flip_counts", "flip_frequencies", "flip_pairs",
           "generalized_energy_distance", "generalized_energy_distance_tf", "hungarian_iou",
           "log_pearson_r", "matched_iou", "mode_frequencies", "normalized_cross_correlation",
           "pairwise_distances", "pairwise_distances_tf", "sample_diversity", "scored_classes",
           "uncertainty_maps"]
