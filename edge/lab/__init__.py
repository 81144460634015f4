"""What happens to a slide after the microscope: a technician reviews and signs it (reviews.py), the
slide's numbers are gathered from results.db (slide.py), then reported (report.py), sent to a
laboratory system as HL7 FHIR (fhir.py), and the reviewed cells feed site calibration (export.py)."""
