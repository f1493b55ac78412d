"""The image side of Create: which manifest a container runs, where its entrypoint comes from, and whether it may run.

``source.EntrypointSource`` is the one entry point (the task service calls ``provide`` once per Create); the
providers are ``content_store`` (containerd's image and content store, over ``containerd``'s gRPC client) and
``registry`` (artifacts the shim pulls itself); ``origin.ImageOrigin`` is the answer they give; ``admission``
decides on it; ``place`` writes a layer into a rootfs. The registry side's documents and rules are ``oci``'s.
"""
