"""What happens to a slide after the microscope: the slide's numbers are gathered from results.db
(slide.py, through edge.results, where its reviews and sign-off are kept), then reported (report.py),
sent to a laboratory system as HL7 FHIR (fhir.py), and the reviewed cells feed site calibration
(export.py). lab reads what the daemon recorded and re-applies its counting rules; the daemon never
imports lab."""
