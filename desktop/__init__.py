"""The desktop helper: runs the core service and the local web API, and shows the windows."""
