"""Execution-provider choice: fixed preference, explicit requests honoured exactly."""

from __future__ import annotations

import pytest

from fer_edge.errors import ProviderError
from fer_edge.providers import PREFERENCE, canonical_name, resolve_providers

ALL = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider",
       "TensorrtExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider"]


@pytest.mark.parametrize("available, expected", [
    (["CPUExecutionProvider"], ["CPUExecutionProvider"]),
    (["AzureExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    (["CPUExecutionProvider", "CUDAExecutionProvider"],
     ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    (ALL, [p for p in PREFERENCE if p != "OpenVINOExecutionProvider"]),
    (["CPUExecutionProvider", "CoreMLExecutionProvider"],
     ["CoreMLExecutionProvider", "CPUExecutionProvider"]),
    (["DmlExecutionProvider", "CPUExecutionProvider"],
     ["DmlExecutionProvider", "CPUExecutionProvider"]),
])
def test_automatic_choice_follows_the_fixed_preference(available, expected):
    assert resolve_providers(None, available=available) == expected


def test_preference_order_is_tensorrt_cuda_coreml_directml_openvino_cpu():
    assert PREFERENCE == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                          "CoreMLExecutionProvider", "DmlExecutionProvider",
                          "OpenVINOExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize("intel, expected", [
    (True, ["OpenVINOExecutionProvider", "CPUExecutionProvider"]),
    (False, ["CPUExecutionProvider"]),
])
def test_openvino_is_automatic_only_on_intel(intel, expected):
    available = ["CPUExecutionProvider", "OpenVINOExecutionProvider"]
    assert resolve_providers(None, available=available, intel=intel) == expected


def test_gpu_providers_stay_ahead_of_openvino():
    available = ["OpenVINOExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, available=available, intel=True) == [
        "CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]


def test_openvino_on_request_anywhere_and_install_hint():
    available = ["CPUExecutionProvider", "OpenVINOExecutionProvider"]
    assert resolve_providers("openvino", available=available, intel=False) == ["OpenVINOExecutionProvider"]
    with pytest.raises(ProviderError, match="pip install onnxruntime-openvino"):
        resolve_providers("openvino", available=["CPUExecutionProvider"])


@pytest.mark.parametrize("requested, expected", [
    ("cpu", ["CPUExecutionProvider"]),
    ("CUDA", ["CUDAExecutionProvider"]),
    ("tensorrt,cuda,cpu", ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                           "CPUExecutionProvider"]),
    (["cuda", "CPUExecutionProvider", "cuda"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("directml", ["DmlExecutionProvider"]),
    ("AzureExecutionProvider", ["AzureExecutionProvider"]),
])
def test_explicit_requests_are_used_exactly(requested, expected):
    assert resolve_providers(requested, available=ALL) == expected


def test_explicit_request_is_not_reordered_by_preference():
    assert resolve_providers("cpu,cuda", available=ALL) == ["CPUExecutionProvider",
                                                           "CUDAExecutionProvider"]


@pytest.mark.parametrize("requested", ["cuda", "tensorrt", ["cpu", "cuda"], "OpenVINOExecutionProvider"])
def test_unavailable_provider_lists_the_available_ones(requested):
    with pytest.raises(ProviderError) as err:
        resolve_providers(requested, available=["CPUExecutionProvider", "AzureExecutionProvider"])
    assert "is not available; available: CPUExecutionProvider (cpu), AzureExecutionProvider" \
        in str(err.value)


def test_gpu_request_says_what_to_install():
    with pytest.raises(ProviderError, match="pip install onnxruntime-gpu"):
        resolve_providers("cuda", available=["CPUExecutionProvider"])


@pytest.mark.parametrize("requested", ["", ",", []])
def test_empty_requests_are_errors(requested):
    with pytest.raises(ProviderError):
        resolve_providers(requested, available=["CPUExecutionProvider"])


def test_no_supported_provider_at_all():
    with pytest.raises(ProviderError, match="none of the supported execution providers"):
        resolve_providers(None, available=["AzureExecutionProvider"])


def test_aliases():
    assert canonical_name(" TRT ") == "TensorrtExecutionProvider"
    assert canonical_name("dml") == "DmlExecutionProvider"
    assert canonical_name("SomethingElse") == "SomethingElse"
