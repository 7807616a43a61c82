"""The names ``facecls classify`` gives what it writes under ``--out``: row labels and statuses, files, folders.

Apart from facecls.classifier so the classify report (facecls.report) can read them without
importing the classifier it is called by.
"""

UNKNOWN = "unknown"  # the label of a face that can be none of the model's people
NO_FACE = "no_face"  # the status (and folder) of a photo without a face
UNREADABLE = "unreadable"  # the status of a file that cannot be decoded
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSONL = "predictions.jsonl"
SUMMARY_NAME = "classify.json"
ANNOTATED_FOLDER = "annotated"
