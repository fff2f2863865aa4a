"""Execution-provider choice: fixed preference, explicit requests honoured exactly."""

from __future__ import annotations

import pytest

from fer_edge.errors import ProviderError
from fer_edge.providers import PREFERENCE, canonical_name, exact_int8_matters, resolve_providers

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


@pytest.mark.parametrize("machine, vnni, exact", [
    ("x86_64", (), True),                    # AVX2 / plain AVX-512: saturating u8s8 kernels
    ("x86_64", None, True),                  # flags unknown: exact answers first
    ("AMD64", None, True),                   # Windows' spelling
    ("x86_64", ("avx512_vnni",), False),     # VNNI adds in int32 already
    ("x86_64", ("avx_vnni", "amx_int8"), False),
    ("aarch64", (), False), ("arm64", None, False),
])
def test_exact_int8_kernels_only_where_they_change_answers(machine, vnni, exact):
    assert exact_int8_matters(machine, vnni) is exact


def test_session_options_choose_exact_int8_kernels_by_cpu(monkeypatch):
    import fer_edge.providers as providers

    def entry(opts):  # ORT raises for a key that was never set
        try:
            return opts.get_session_config_entry(providers.X64_QUANT_PRECISION)
        except Exception:
            return None

    monkeypatch.setattr(providers.platform, "machine", lambda: "x86_64")
    for vnni, expected in (((), "1"), (("avx512_vnni",), None)):
        monkeypatch.setattr(providers, "cpu_vnni_flags", lambda vnni=vnni: vnni)
        assert entry(providers.session_options(1)) == expected
    assert entry(providers.session_options(1, exact_int8=True)) == "1"  # forced, as benchmarks do
    assert entry(providers.session_options(1, exact_int8=False)) is None
