"""The pod sandbox the daemon holds for containerd 2.x (`sandboxer = "shim"`): pod.py (CRI's PodSandboxConfig
onto a plan), holder.py + holder.c (the process that holds the pod's namespaces), cgroup.py (its cgroup),
files.py (the pod's /etc files), service.py (the Sandbox API as plain methods). Imports nothing here."""
