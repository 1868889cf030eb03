"""The embedded default "data world": synthetic chest radiographs, reports and labels.

Every study is one latent :class:`Case` (patient anatomy plus findings with side, size and
device attributes; :mod:`.cases`). The same case drives the rendered image
(:func:`render_image`, :mod:`.render`), the radiology-style report (:func:`write_report`,
:mod:`.reports`) and the labels, so images and reports share exactly the information that
image-text pretraining can exploit, while the labels are only written where the evaluation
needs them (never into a pretraining manifest).

:func:`generate_world` (:mod:`.world`) writes ordinary manifests (CSV) and PNG files, so the
synthetic world goes through the same loading path as real data::

    out_dir/
      world.json                  the spec + format version (cache key)
      hospital_a/manifest.csv     id, image, report, patient_id, study_id   (image + report pairs)
      hospital_b/manifest.csv     id, image, patient_id                     (images only)
      hospital_c/manifest.csv     id, report                                (reports only)
      labeled/manifest.csv        id, image, patient_id, split, label_<finding>...
      hospital_{a,b,c}/labels.csv id, label_<finding>...  (retrieval evaluation only)

Radiographs are shown in the usual orientation: the patient's right is on the image's left.

From the command line: ``fedvlp generate-demo OUT_DIR [--quick]``. After a change of the report
grammar, :func:`write_vocabulary` rewrites the shipped demo vocabulary.
"""

from __future__ import annotations

from .cases import DEVICES, FINDINGS, SEVERITIES, Anatomy, Case, Finding, sample_case
from .render import Acquisition, render_image
from .reports import FINDING_KEYWORDS, demo_vocabulary, write_report, write_vocabulary
from .world import FORMAT_VERSION, SITES, PlannedItem, WorldSpec, generate_world, plan_site

__all__ = [
    "FINDINGS",
    "FINDING_KEYWORDS",
    "SEVERITIES",
    "DEVICES",
    "SITES",
    "FORMAT_VERSION",
    "Anatomy",
    "Finding",
    "Case",
    "Acquisition",
    "WorldSpec",
    "PlannedItem",
    "sample_case",
    "render_image",
    "write_report",
    "plan_site",
    "generate_world",
    "demo_vocabulary",
    "write_vocabulary",
]
