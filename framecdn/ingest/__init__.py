"""Write side: turn DICOM instances into frame objects, and take them away again."""
