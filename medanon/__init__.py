"""medanon: de-identify DICOM archives and their radiology reports (DICOM PS3.15 Annex E)."""

__version__ = "0.1.0"
