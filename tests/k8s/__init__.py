"""Tests of the Kubernetes manifests under k8s/ (kustomize render, schemas, policies)."""
