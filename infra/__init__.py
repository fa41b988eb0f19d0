"""Deployment: Chalice stage config, IAM policies, the CloudFormation merge template, packaging."""
