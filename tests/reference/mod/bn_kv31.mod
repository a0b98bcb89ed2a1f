COMMENT
Kv3.1-type fast K: the kinetics of Rettig et al. (1992) as in Hay et al. (2011) SKv3_1.mod
(ModelDB 139653), as declared by bayesneuron.channels.Kv31 (an InfTauGate). Reference for
tests/test_cortical_channels.py.

Same equations as SKv3_1.mod, plus an optional temperature factor on mTau (q10 = 1 by default:
none, as in the source). cnexp: exponential Euler on the gate.
ENDCOMMENT

NEURON {
    SUFFIX bn_kv31
    USEION k READ ek WRITE ik
    RANGE gbar
    GLOBAL q10, temp
}

UNITS {
    (mA) = (milliamp)
    (mV) = (millivolt)
    (S) = (siemens)
}

PARAMETER {
    gbar = 0.01 (S/cm2)
    q10 = 1
    temp = 34 (degC)
}

ASSIGNED {
    v (mV)
    celsius (degC)
    ek (mV)
    ik (mA/cm2)
    mInf
    mTau (ms)
}

STATE { m }

INITIAL {
    rates(v)
    m = mInf
}

BREAKPOINT {
    SOLVE states METHOD cnexp
    ik = gbar * m * (v - ek)
}

DERIVATIVE states {
    rates(v)
    m' = (mInf - m) / mTau
}

UNITSOFF
PROCEDURE rates(vm) {
    LOCAL tadj
    tadj = q10^((celsius - temp) / 10)
    mInf = 1 / (1 + exp((vm - 18.7) / -9.7))
    mTau = 0.2 * 20 / (1 + exp((vm + 46.56) / -44.14)) / tadj
}
UNITSON
