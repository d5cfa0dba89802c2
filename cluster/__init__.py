"""Running the project's entry points on a Ray cluster.

`cluster/*.yaml` are Ray cluster-launcher files (AWS, GCP, existing machines) and a KubeRay RayJob;
`python -m cluster.submit` sends `python -m pretrain` or `python -m eval.linear` to a running
cluster through Ray's job API. Nothing here imports `pretrain` or `eval`: a cluster only launches
their command lines.
"""
