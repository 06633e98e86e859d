"""A submission whose functions fail in the three ways a sandbox must survive: L_model_forward never returns,
compute_cost raises, L_model_backward asks for far more memory than the limit."""

import numpy as np

print("importing the broken submission")


def L_model_forward(X, parameters):
    while True:  # an endless loop: the time limit stops it
        pass


def compute_cost(AL, Y):
    m = Y.shape[1]
    return -np.sum(Y * np.log(AL)) / m + undefined_name  # noqa: F821 - a NameError, as students make them


def L_model_backward(AL, Y, caches):
    print("allocating 16 GB")
    big = np.ones((2 ** 31,))  # 16 GB: over the memory limit
    return {"dW1": big}
