COMMENT
h-current (HCN): the kinetics of Kole, Hallermann & Stuart (2006) as in Hay et al. (2011) Ih.mod
(ModelDB 139653), as declared by bayesneuron.channels.Ih. Reference for
tests/test_cortical_channels.py.

Same equations as Ih.mod, plus an optional temperature factor on mTau (q10 = 1 by default: none,
as in the source). cnexp: exponential Euler on the gate.
ENDCOMMENT

NEURON {
    SUFFIX bn_ih
    NONSPECIFIC_CURRENT i
    RANGE gbar, e
    GLOBAL q10, temp
}

UNITS {
    (mA) = (milliamp)
    (mV) = (millivolt)
    (S) = (siemens)
}

PARAMETER {
    gbar = 0.0001 (S/cm2)
    e = -45 (mV)
    q10 = 1
    temp = 34 (degC)
}

ASSIGNED {
    v (mV)
    celsius (degC)
    i (mA/cm2)
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
    i = gbar * m * (v - e)
}

DERIVATIVE states {
    rates(v)
    m' = (mInf - m) / mTau
}

UNITSOFF
PROCEDURE rates(vm) {
    LOCAL a, b, x, tadj
    tadj = q10^((celsius - temp) / 10)
    x = vm + 154.9
    if (fabs(x) > 1e-6) {
        a = 0.001 * 6.43 * x / (exp(x / 11.9) - 1)
    } else {
        a = 0.001 * 6.43 * 11.9
    }
    b = 0.001 * 193 * exp(vm / 33.1)
    mInf = a / (a + b)
    mTau = 1 / tadj / (a + b)
}
UNITSON
