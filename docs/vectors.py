#!/usr/bin/env python3
"""Regenerates the numeric test vectors of docs/MATH.md section 10 (float64, numpy only).

Every analytic gradient is checked against a central finite difference.
Run (from the repository root):  .venv/bin/python docs/vectors.py
"""
import math
import numpy as np

np.set_printoptions(precision=6, suppress=False)


def lse(v):
    m = np.max(v)
    return m + math.log(np.sum(np.exp(v - m)))


def softmax(v):
    e = np.exp(v - np.max(v))
    return e / e.sum()


def fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(len(x)):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


def fmt(v):
    if np.ndim(v) == 0:
        return f"{float(v):.6g}"
    return "[" + ", ".join(f"{float(x):.6g}" for x in np.ravel(v)) + "]"


def check(name, analytic, f, x):
    num = fd_grad(f, x)
    err = float(np.max(np.abs(num - analytic)))
    assert err < 1e-6, (name, err, analytic, num)


# ---------------------------------------------------------------- shared inputs
ell = np.array([-12.0, -15.5, -9.8, -20.1])      # policy sequence log-probs
ell_ref = np.array([-12.5, -15.0, -10.4, -19.6])  # anchor sequence log-probs
tau = 0.8
s = (ell - ell_ref) / tau
K = len(s)
print("== shared: s =", fmt(s), " p = softmax(s) =", fmt(softmax(s)))


# ------------------------------------------------- V1 listwise CE, raw rewards
def listwise_ce(s, q):
    return lse(s) - float(q @ s)


r1 = np.array([1.0, 0.0, 0.5, -0.1])
beta_r = 0.5
q1 = softmax(r1 / beta_r)
L1 = listwise_ce(s, q1)
g1 = softmax(s) - q1
check("V1", g1, lambda x: listwise_ce(x, q1), s)
print("\n== V1 listwise anchored CE, q = softmax(r/beta_r)")
print("r =", fmt(r1), "beta_r =", beta_r)
print("q =", fmt(q1))
print("loss =", fmt(L1), " KL(q||p) =", fmt(L1 + float(q1 @ np.log(q1))))
print("dL/ds =", fmt(g1))
print("dL/dell =", fmt(g1 / tau))
H = np.diag(softmax(s)) - np.outer(softmax(s), softmax(s))
print("Hessian wrt s diag =", fmt(np.diag(H)), " (wrt ell: divide by tau^2 =", tau**2, ")")

# reference-code targets for the same rewards
std_u = lambda v: float(np.std(v, ddof=1))
A_trl = (r1 - r1.mean()) / (std_u(r1) + 1e-4)            # TRL GRPO-style advantage
z_a79 = (A_trl - A_trl.mean()) / (std_u(A_trl) + 1e-8)   # TRL-ADPO Nov-20 re-standardisation
q_a79 = softmax(z_a79 / beta_r)
q_late = softmax((A_trl - A_trl.mean()) / beta_r)         # TRL-ADPO Nov-25+ (centre only)
A_verl = (r1 - r1.mean()) / std_u(r1)                     # verl: unbiased std, no eps
q_verl = softmax(A_verl / 0.3)                            # verl default beta_reward 0.3
print("TRL advantage A =", fmt(A_trl))
print("q (TRL Nov-20, z-score/0.5) =", fmt(q_a79), " loss =", fmt(listwise_ce(s, q_a79)))
print("q (TRL Nov-25+, centred/0.5) =", fmt(q_late), " loss =", fmt(listwise_ce(s, q_late)))
print("q (verl, A/0.3) =", fmt(q_verl), " loss =", fmt(listwise_ce(s, q_verl)))


# ----------------------------------------------------- V2 pairwise soft-DPO
def pair_loss(li, lj, ri, rj, beta, q):
    z = beta * ((li - lj) - (ri - rj))
    return math.log1p(math.exp(z)) - q * z if z < 30 else z - q * z


beta = 1.0 / tau
for qij in (0.7, 1.0):
    z = beta * ((ell[0] - ell[1]) - (ell_ref[0] - ell_ref[1]))
    L = pair_loss(ell[0], ell[1], ell_ref[0], ell_ref[1], beta, qij)
    sig = 1 / (1 + math.exp(-z))
    gz = sig - qij
    gi, gj = beta * gz, -beta * gz
    fi = lambda x: pair_loss(x[0], x[1], ell_ref[0], ell_ref[1], beta, qij)
    check("V2", np.array([gi, gj]), fi, np.array([ell[0], ell[1]]))
    # equals K=2 listwise CE with q=(qij, 1-qij)
    L_list = listwise_ce(s[:2], np.array([qij, 1 - qij]))
    assert abs(L - L_list) < 1e-12
    print(f"\n== V2 pairwise soft-DPO q_ij={qij}: z={fmt(z)} sigma(z)={fmt(sig)} loss={fmt(L)} "
          f"dL/dz={fmt(gz)} dL/dell_i={fmt(gi)} dL/dell_j={fmt(gj)}")


# ------------------------------------------------------ V3 Plackett-Luce (sum)
def pl_order(r):
    return np.argsort(-r, kind="stable")


def pl_sum(s, order):
    v = s[order]
    return sum(lse(v[k:]) - v[k] for k in range(len(v) - 1))


def pl_sum_grad(s, order):
    v = s[order]
    g = np.zeros_like(v)
    for k in range(len(v) - 1):
        g[k:] += softmax(v[k:])
        g[k] -= 1.0
    out = np.zeros_like(s)
    out[order] = g
    return out


r3 = np.array([0.3, -1.2, 2.0, 0.7])
o3 = pl_order(r3)
L3 = pl_sum(s, o3)
g3 = pl_sum_grad(s, o3)
check("V3", g3, lambda x: pl_sum(x, o3), s)
print("\n== V3 Plackett-Luce (sum over K-1 stages)")
print("r =", fmt(r3), " ranking (best first, 0-based) =", o3.tolist())
print("loss =", fmt(L3), " dL/ds =", fmt(g3))


# ------------------------------ V4 verl-style PL (mean, top-k, smoothing, poly)
def pl_verl(s, adv, top_k=0, temp=1.0, ls=0.0, poly=False, eps=1.0):
    v = (s / temp)[np.argsort(-adv, kind="stable")]
    G = len(v)
    terms = []
    for k in range(G - 1):
        lz = lse(v[k:])
        t = lz - v[k]
        if ls > 0:
            t = (1 - ls) * t + ls * (lz - v[k:].mean())
        terms.append(t)
    if 0 < top_k < G - 1:
        terms = terms[:top_k]
    terms = np.array(terms)
    if poly:
        terms = terms + eps * (1 - np.exp(-np.minimum(terms, 20.0)))
    return float(terms.mean())


print("\n== V4 verl-style PL (mean over positions); same s, adv = r3")
for cfg in [dict(), dict(top_k=3, ls=0.1, poly=True, eps=1.0), dict(top_k=2, ls=0.1, poly=True, eps=1.0)]:
    L = pl_verl(s, r3, **cfg)
    g = fd_grad(lambda x: pl_verl(x, r3, **cfg), s)
    print(cfg or "plain", " loss =", fmt(L), " dL/ds (finite diff) =", fmt(g))


# ----------------------------------------------------------- V5 top-1 vs rest
best = int(np.argmax(r1))
q5 = np.eye(K)[best]
L5 = listwise_ce(s, q5)
g5 = softmax(s) - q5
check("V5", g5, lambda x: listwise_ce(x, q5), s)
print("\n== V5 top-1-vs-rest, best index =", best, " loss =", fmt(L5), " dL/ds =", fmt(g5))


# -------------------------------------------- V6 KDE-CDF-logit target (INFERRED)
def phi_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def silverman(r):
    sd = std_u(r)
    q75, q25 = np.percentile(r, [75, 25])
    spread = min(sd, (q75 - q25) / 1.349) if q75 > q25 else sd
    return 0.9 * spread * len(r) ** (-0.2)


def kde_target(r, h, T=1.0, clip=1e-4):
    F = np.array([np.mean([phi_cdf((ri - rj) / h) for rj in r]) for ri in r])
    F = np.clip(F, clip, 1 - clip)
    logits = np.log(F / (1 - F))
    return F, logits, softmax(logits / T)


r6 = np.array([0.3, -1.2, 2.0, 40.0])   # one heavy-tailed outlier
h6 = silverman(r6)
F6, lg6, q6 = kde_target(r6, h6)
L6 = listwise_ce(s, q6)
g6 = softmax(s) - q6
print("\n== V6 KDE-CDF-logit target (INFERRED construction)")
print("r =", fmt(r6), " Silverman h =", fmt(h6))
print("F_hat =", fmt(F6), " logit =", fmt(lg6), " q =", fmt(q6))
print("loss =", fmt(L6), " dL/ds =", fmt(g6))
print("for contrast softmax(r/0.5) =", fmt(softmax(r6 / 0.5)))
F6b, lg6b, q6b = kde_target(r6, 1.0)
print("fixed h=1.0: F_hat =", fmt(F6b), " q =", fmt(q6b), " loss =", fmt(listwise_ce(s, q6b)))


# ------------------------------------------------ V7 on-policy degenerate case
s0 = np.zeros(K)
L7 = listwise_ce(s0, q1)
g7 = softmax(s0) - q1
print("\n== V7 on-policy (anchor = detached current policy => s = 0), q = V1 q")
print("loss =", fmt(L7), " (= log K =", fmt(math.log(K)), ")  dL/ds =", fmt(g7), " dL/dell =", fmt(g7 / tau))


# ------------------------------------------------------ V8 adaptive temperature
Hq = -float(np.sum(q1 * np.log(q1 + 1e-8)))
Hn = Hq / math.log(K)
tau_a = max(0.1, 0.8 * (1 - 1.0 * Hn))
tau_b = max(0.05, 0.8 * (1 - 0.5 * Hn))
tau_c = max(0.1, 0.8 * (1 - 1.0 * (1 - Hn)))
print("\n== V8 adaptive tau from q of V1: H(q) =", fmt(Hq), " H/logK =", fmt(Hn))
print("entropy-of-q rule (alpha=1.0, tau_min=0.1, base 0.8):", fmt(tau_a))
print("entropy-of-q rule (alpha=0.5, tau_min=0.05, base 0.8):", fmt(tau_b))
print("inverted rule Nov-24 (alpha=1.0, tau_min=0.1, base 0.8):", fmt(tau_c))
Hbar, Rbar = 0.3, 0.2
tau_h = min(5.0, max(0.1, 0.8 * (1 + 0.5 * Hbar + 1.0 * (1 - Hbar) * (1 - Rbar))))
print("smooth hybrid (H=0.3, R=0.2, alpha=0.5, beta=1.0, base 0.8):", fmt(tau_h))
# verl HEAD batch rule
S_old = np.array([-0.9, -1.4, -0.6, -2.2])   # length-normalised old seq log-probs
S_new = np.array([-0.85, -1.5, -0.55, -2.1])
adv = (r1 - r1.mean()) / std_u(r1)
maxH = math.log(151936)
h_static = float(np.clip(-S_old / maxH, 0, 1).mean())
h_dyn = float(np.clip(-S_new / maxH, 0, 1).mean())
rsig = 2 * float(((adv - adv.min()) / max(adv.max() - adv.min(), 1e-6)).mean()) - 1
tau_v = min(1.5, max(0.2, 0.5 * (1 + 0.2 * h_static + 0.5 * (1 - h_dyn) * (-rsig))))
print("verl HEAD rule (tau=0.5, a=0.2, b=0.5, [0.2,1.5], V=151936): h_static =", fmt(h_static),
      " h_dyn =", fmt(h_dyn), " reward_signal =", fmt(rsig), " tau_eff =", fmt(tau_v))


# ----------------------------------------------------------------- V9 GRPO
rg = np.array([1.0, 0.0, 1.0, 0.0])
Ag = (rg - rg.mean()) / (std_u(rg) + 1e-4)
print("\n== V9 GRPO advantages for r =", fmt(rg), ":", fmt(Ag))
new = np.array([-1.0, -0.5, -2.0])
old = np.array([-1.2, -0.4, -2.5])
ref = np.array([-1.1, -0.6, -2.2])
eps = 0.2


def grpo_seq(newlp, A, beta_kl=0.0, level="token"):
    lr = newlp - old
    if level == "sequence":
        lr = np.full_like(lr, lr.mean())
    rho = np.exp(lr)
    t = -np.minimum(rho * A, np.clip(rho, 1 - eps, 1 + eps) * A)
    kl = np.exp(ref - newlp) - (ref - newlp) - 1
    return float(np.mean(t + beta_kl * kl))


for A in (Ag[0], Ag[1]):
    for level in ("token", "sequence"):
        for bk in (0.0, 0.04):
            L = grpo_seq(new, A, bk, level)
            g = fd_grad(lambda x: grpo_seq(x, A, bk, level), new)
            print(f"A={A:.6g} level={level} beta_kl={bk}: loss={fmt(L)} dL/dlogp={fmt(g)}")
print("ratios =", fmt(np.exp(new - old)), " k3 per token =", fmt(np.exp(ref - new) - (ref - new) - 1))


# ------------------------------------------------- V10 closed-form optimum
q10 = q1
pi_ref = softmax(ell_ref)          # anchor restricted to the candidate set
pi_star = pi_ref * q10 ** tau
pi_star /= pi_star.sum()
s_star = (np.log(pi_star) - np.log(pi_ref)) / tau
print("\n== V10 optimum pi* ∝ pi_ref q^tau over the 4 candidates:", fmt(pi_star),
      " softmax(s*) =", fmt(softmax(s_star)), "(should equal q)")

# --------------------------------------------------------------- V11 KD case
zT = np.array([2.0, 1.0, 0.1])
zS = np.array([1.5, 0.2, 0.3])
T = 2.0
qT = softmax(zT / T)
L11 = listwise_ce(zS / T, qT)
g11 = (softmax(zS / T) - qT) / T
check("V11", g11, lambda x: listwise_ce(x / T, qT), zS)
print("\n== V11 KD special case (uniform anchor, tau=T=2): q =", fmt(qT), " loss =", fmt(L11),
      " dL/dz_student =", fmt(g11))
print("\nall finite-difference checks passed")


# ------------- V12 paper LLM configuration, on-policy step (TRL-ADPO of 2025-11-20)
print("\n== V12 LLM config: K=8, tau_base=0.8, beta_r=0.5, adaptive alpha=1.0, tau_min=0.1, s=0 (on-policy)")
for rr in ([1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 0, -0.05, 0, 0, -0.1, 0, 0]):
    rr = np.array(rr, dtype=float)
    A = (rr - rr.mean()) / (std_u(rr) + 1e-4)
    z = (A - A.mean()) / (std_u(A) + 1e-8)
    q = softmax(z / 0.5)
    Hn = -float(np.sum(q * np.log(q + 1e-8))) / math.log(8)
    t = max(0.1, 0.8 * (1 - 1.0 * Hn))
    w = (1 / 8 - q) / t          # dL/dell_i at s = 0 ; a descent step moves ell_i by -lr * w_i
    print("r =", fmt(rr))
    print("  GRPO A =", fmt(A))
    print("  q =", fmt(q), " H/log8 =", fmt(Hn), " tau =", fmt(t))
    print("  dL/dell (s=0) =", fmt(w), " loss =", fmt(math.log(8)))


# ---------------------------- V13 CLTR (wk222/verlm a5ec9ae2, loss_variant "cltr"; u_old = 0)
from statistics import NormalDist  # noqa: E402  (the probit, numpy having none)


def cltr(s, r, beta, eta=0.5, eps_tr=0.15):
    """Loss and dL/ds of one group: centred s regressed onto the RMS-shrunk Gaussian rank."""
    k = len(s)
    ranks = np.argsort(np.argsort(r, kind="stable"), kind="stable")  # lowest reward: 0
    p = np.clip((ranks + 0.5) / k, 1e-6, 1 - 1e-6)
    r_hat = np.array([NormalDist().inv_cdf(x) for x in p])
    soft = (r_hat - r_hat.mean()) / (beta + eta)
    c = min(1.0, eps_tr / math.sqrt(np.mean(soft ** 2) + 1e-8))
    e = (s - s.mean()) - c * soft
    return 0.5 * float(np.mean(e ** 2)), (e - e.mean()) / k


print("\n== V13 CLTR on V1's group (r =", fmt(r1), ", tau = beta = 0.8, eta = 0.5)")
for eps_tr in (0.15, 10.0):
    L, g_s = cltr(s, r1, tau, eps_tr=eps_tr)
    g = g_s / tau  # dL/dell = dL/ds / tau
    check(f"V13 eps_tr={eps_tr}", g, lambda x: cltr((x - ell_ref) / tau, r1, tau, eps_tr=eps_tr)[0], ell)
    print(f"eps_tr={eps_tr}: loss={fmt(L)} dL/dell={fmt(g)}")
