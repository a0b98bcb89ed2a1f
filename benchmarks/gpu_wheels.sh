#!/usr/bin/env bash
# Wheels of the packages bayesneuron's GPU checks need that the lent GPU machines' image
# lacks (it has torch, triton, numpy, scipy, pandas, xarray, h5py, matplotlib, tqdm, pytest,
# torchdiffeq, opt-einsum; Python 3.12; nothing can be fetched there). Run here, where pip
# works; then name .whl in the device tool's `carry`, and cuda_check.sh / gpu_rugged.sh
# install them into /tmp/site there. ≈ 3 MB. Checked on the CPU in a venv holding only the
# image's packages: the rugged-posterior flow and the GPU tests' collection run with these.
#   bash benchmarks/gpu_wheels.sh        (then: echo /.whl/ >> .git/info/exclude)
set -euo pipefail
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pyro-ppl==1.9.2 pyro-api==0.1.2 arviz==0.23.4 h5netcdf==1.8.3 xarray-einstats==0.9.1 \
    platformdirs==4.14.9
ls .whl
