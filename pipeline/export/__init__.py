"""Model export: ONNX files of registered models, and the build configuration of Vastai's compiler (vamc)."""
