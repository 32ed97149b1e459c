"""What runs a model outside eager PyTorch, each behind the same call as the PyTorch variants
(`model(input_ids=..., attention_mask=...[, token_type_ids=...]).logits`): the ONNX export and its ONNX Runtime
session, the OpenVINO conversion and compiled model, and the Triton int8 GEMM kernel."""
