"""facecls: from a messy scrape of a few people's photos to a face classifier.

The public API, importable from here (loaded on first use, so ``import facecls`` stays light and
TensorFlow is imported only by what needs it)::

    import facecls

    result = facecls.run("scrape", "runs/first")                 # ingest -> crop -> curate -> train -> evaluate
    with facecls.Classifier("runs/first/model") as classifier:   # a model dir, loaded once
        photo = classifier.classify_path("party.jpg")            # a PhotoPrediction, one FacePrediction per face
    facecls.classify("runs/first/model", ["photos"], "classified")  # the batch stage, as the CLI runs it

The stages' settings and records are here too; each stage is the function of its module
(``facecls.ingest.ingest``, ``facecls.crop.crop``, ``facecls.curate.curate``), which holds the rest.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    # settings, declared once (facecls.config)
    "IngestSettings": "facecls.config",
    "DetectSettings": "facecls.config",
    "CropSettings": "facecls.config",
    "CurateSettings": "facecls.config",
    "TrainSettings": "facecls.config",
    "RunSettings": "facecls.pipeline",
    # the stages (ingest, crop and curate are the functions of the modules of those names)
    "train_model": "facecls.train",
    "evaluate_crops": "facecls.evaluate",
    "run": "facecls.pipeline",
    "classify": "facecls.classifier",
    "Classifier": "facecls.classifier",
    "FaceCropper": "facecls.faces",
    # records
    "IngestRecord": "facecls.ingest",
    "IngestResult": "facecls.ingest",
    "Detection": "facecls.detect",
    "Face": "facecls.faces",
    "PhotoFaces": "facecls.faces",
    "CropRecord": "facecls.crop",
    "PhotoRecord": "facecls.crop",
    "CropResult": "facecls.crop",
    "SplitItem": "facecls.curate",
    "CurateResult": "facecls.curate",
    "TrainResult": "facecls.train",
    "EvaluationReport": "facecls.evaluate",
    "RunResult": "facecls.pipeline",
    "FacePrediction": "facecls.predictions",
    "PhotoPrediction": "facecls.predictions",
    "ClassifyResult": "facecls.classifier",
    "ModelInfo": "facecls.modeldir",
    "RunLayout": "facecls.layout",
    # errors
    "FaceclsError": "facecls.errors",
    "ImageDecodeError": "facecls.errors",
    "ModelDirError": "facecls.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'facecls' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
