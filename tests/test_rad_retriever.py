"""The RAD retriever is the best specialist on the validation split, never on test (SPEC §7, Fig. 5/A1)."""
import pytest

from tasks.rad.retriever import choose_retriever


def _job(arch, **metrics):
    return {"dataset": "ham10000", "arch": arch, "metrics": metrics}


def test_the_best_validation_specialist_is_chosen_not_the_best_on_test():
    jobs = {"resnet18": _job("resnet18", val_macro_f1=0.61, test_macro_f1=0.90, best_val_loss=0.5),
            "densenet121": _job("densenet121", val_macro_f1=0.72, test_macro_f1=0.40, best_val_loss=0.6),
            "vit_b16": _job("vit_b16", val_macro_f1=0.55, test_macro_f1=0.95, best_val_loss=0.4)}
    choice = choose_retriever(jobs, "multiclass", "best-validation")
    assert choice["arch"] == "densenet121"
    assert choice["metric"] == "val_macro_f1"
    assert choice["scores"] == {"resnet18": 0.61, "densenet121": 0.72, "vit_b16": 0.55}


def test_binary_sets_are_chosen_on_validation_accuracy_ties_on_validation_loss_then_order():
    jobs = {"a": _job("a", val_accuracy=0.8, val_macro_f1=0.9, best_val_loss=0.7),
            "b": _job("b", val_accuracy=0.8, val_macro_f1=0.1, best_val_loss=0.3),
            "c": _job("c", val_accuracy=0.8, val_macro_f1=0.1, best_val_loss=0.3)}
    assert choose_retriever(jobs, "binary", "best-validation")["arch"] == "b"


def test_a_fixed_retriever_and_its_errors():
    jobs = {"resnet18": _job("resnet18", val_macro_f1=0.1)}
    assert choose_retriever(jobs, "multilabel", "resnet18")["arch"] == "resnet18"
    with pytest.raises(ValueError, match="rad.retriever 'vgg16': no finished specialist job"):
        choose_retriever(jobs, "multilabel", "vgg16")
    with pytest.raises(ValueError, match="metrics lack 'val_accuracy'"):
        choose_retriever(jobs, "binary", "best-validation")
    assert choose_retriever({}, "binary", "best-validation") is None
