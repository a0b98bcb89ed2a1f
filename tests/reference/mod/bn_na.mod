COMMENT
Transient Na: the kinetics of Mainen & Sejnowski (1996) na.mod (ModelDB 2488), as declared by
bayesneuron.channels.NaT. Reference for tests/test_cortical_channels.py.

Same equations as na.mod, except: no TABLE (rates evaluated exactly, usetable = 0), and gbar is
the conductance itself (na.mod multiplies it by tadj). cnexp: exponential Euler on the gates.
ENDCOMMENT

NEURON {
    SUFFIX bn_na
    USEION na READ ena WRITE ina
    RANGE gbar
    GLOBAL q10, temp, vshift
}

UNITS {
    (mA) = (milliamp)
    (mV) = (millivolt)
    (S) = (siemens)
}

PARAMETER {
    gbar = 0.04 (S/cm2)
    vshift = -10 (mV)
    q10 = 2.3
    temp = 23 (degC)
}

ASSIGNED {
    v (mV)
    celsius (degC)
    ena (mV)
    ina (mA/cm2)
    minf
    hinf
    mtau (ms)
    htau (ms)
}

STATE { m h }

INITIAL {
    rates(v + vshift)
    m = minf
    h = hinf
}

BREAKPOINT {
    SOLVE states METHOD cnexp
    ina = gbar * m * m * m * h * (v - ena)
}

DERIVATIVE states {
    rates(v + vshift)
    m' = (minf - m) / mtau
    h' = (hinf - h) / htau
}

UNITSOFF
PROCEDURE rates(vm) {
    LOCAL a, b, tadj
    tadj = q10^((celsius - temp) / 10)
    a = trap0(vm, -35, 0.182, 9)
    b = trap0(-vm, 35, 0.124, 9)
    mtau = 1 / tadj / (a + b)
    minf = a / (a + b)
    a = trap0(vm, -50, 0.024, 5)
    b = trap0(-vm, 75, 0.0091, 5)
    htau = 1 / tadj / (a + b)
    hinf = 1 / (1 + exp((vm + 65) / 6.2))
}

FUNCTION trap0(x, th, a, q) {
    if (fabs(x - th) > 1e-6) {
        trap0 = a * (x - th) / (1 - exp(-(x - th) / q))
    } else {
        trap0 = a * q
    }
}
UNITSON
