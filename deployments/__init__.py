"""Deployments of the anonymize flow: on demand (a form in the Prefect UI) and scheduled incremental."""
