COMMENT
Delayed-rectifier K: the kinetics of Mainen & Sejnowski (1996) kv.mod (ModelDB 2488), as declared
by bayesneuron.channels.Kdr. Reference for tests/test_cortical_channels.py.

Same equations as kv.mod, except: no TABLE (rates evaluated exactly, usetable = 0), and gbar is
the conductance itself (kv.mod multiplies it by tadj). cnexp: exponential Euler on the gate.
ENDCOMMENT

NEURON {
    SUFFIX bn_kdr
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
    gbar = 0.02 (S/cm2)
    q10 = 2.3
    temp = 23 (degC)
}

ASSIGNED {
    v (mV)
    celsius (degC)
    ek (mV)
    ik (mA/cm2)
    ninf
    ntau (ms)
}

STATE { n }

INITIAL {
    rates(v)
    n = ninf
}

BREAKPOINT {
    SOLVE states METHOD cnexp
    ik = gbar * n * (v - ek)
}

DERIVATIVE states {
    rates(v)
    n' = (ninf - n) / ntau
}

UNITSOFF
PROCEDURE rates(vm) {
    LOCAL a, b, tadj
    tadj = q10^((celsius - temp) / 10)
    a = trap0(vm, 25, 0.02, 9)
    b = trap0(vm, 25, -0.002, -9)
    ntau = 1 / tadj / (a + b)
    ninf = a / (a + b)
}

FUNCTION trap0(x, th, a, q) {
    if (fabs(x - th) > 1e-6) {
        trap0 = a * (x - th) / (1 - exp(-(x - th) / q))
    } else {
        trap0 = a * q
    }
}
UNITSON
