"""Central evaluation of the image encoder: the label-efficiency sweep.

After federated pretraining, the image encoder is linear-probed and fine-tuned on a labelled
set at several label fractions and seeds, for several initialisations, and per-class test
AUCs are reported; checkpoints with a text side are also scored by zero-shot retrieval
(:mod:`.retrieval`) and masked-patch recipes by image regeneration (:mod:`.regeneration`).
See docs/evaluation.md. Typical use::

    from fedvlp.core.config import ModelConfig
    from fedvlp.core.evaluation import SweepConfig, load_labeled, run_sweep, format_table

    labeled = load_labeled(manifest, ["label_pneumonia_vs_normal"], image_size=64, id_column="sample_id")
    encoder_config = ModelConfig.preset("small", 64, 1000).image
    df = run_sweep({"random": None, "federated": state}, encoder_config, labeled, out_dir)
    print(format_table(df))
"""

from .data import SPLITS, LabeledSet, derive_patient_id, load_labeled, patient_split, sample_fraction, split_manifest
from .encoders import Init, build_encoder, encoder_state, state_hash
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .metrics import accuracy, auc_per_class, average_precision_per_class, f1, mean_auc
from .probe import FittedProbe, ProbeResult, extract_features, fit_logistic, fit_probe, linear_probe
from .report import (
    format_table,
    label_efficiency,
    markdown_report,
    plot_auc_vs_labels,
    summarise,
    t_tests,
    write_outputs,
)
from .sweep import PROTOCOLS, RESULT_COLUMNS, SweepConfig, cell_file, load_results, run_sweep
from .tasks import Task

__all__ = [
    "SPLITS",
    "LabeledSet",
    "load_labeled",
    "patient_split",
    "sample_fraction",
    "derive_patient_id",
    "split_manifest",
    "Init",
    "build_encoder",
    "encoder_state",
    "state_hash",
    "Task",
    "cell_file",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "accuracy",
    "auc_per_class",
    "average_precision_per_class",
    "f1",
    "mean_auc",
    "FittedProbe",
    "ProbeResult",
    "extract_features",
    "fit_logistic",
    "fit_probe",
    "linear_probe",
    "format_table",
    "label_efficiency",
    "markdown_report",
    "t_tests",
    "plot_auc_vs_labels",
    "summarise",
    "write_outputs",
    "PROTOCOLS",
    "RESULT_COLUMNS",
    "SweepConfig",
    "load_results",
    "run_sweep",
]
