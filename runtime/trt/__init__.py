"""TensorRT through onnxruntime's TensorRT execution providers (no TensorRT import here).

profiles.py  min/opt/max of every dynamic input of every graph, from the bundle's facts
stamp.py     the manifest's `engines` section (pending | built) and the check of a built
             stamp against the running platform (TensorRT version, GPU SM, engine hashes)
ep.py        which TensorRT EP this onnxruntime offers, its options per graph, the platform probe
build.py     building the engines of a bundle (onnxruntime builds them; we record the stamp)
"""
