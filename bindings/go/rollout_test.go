package adpo

import "testing"

func TestRolloutRecordsAndConcat(t *testing.T) {
	a, err := NewBatch(2, 3, []int64{1, 2, 3, 1, 2, 4}, nil, []uint8{0, 1, 1, 0, 1, 1}, []int64{5, 5})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, err = a.RolloutLogp()
	wantStatus(t, err, StatusInvalidArgument)
	if err := a.SetRolloutLogp([]float64{9, -1, -2, 9, -3, -4}); err != nil {
		t.Fatal(err)
	}
	got, err := a.RolloutLogp()
	if err != nil || got[0] != 0 || got[1] != -1 || got[5] != -4 {
		t.Fatalf("RolloutLogp = %v, %v", got, err)
	}
	wantStatus(t, a.SetRolloutLogp([]float64{1, 2}), StatusShapeMismatch)
	wantStatus(t, a.SetTruncated([]uint8{0, 2}), StatusInvalidArgument)
	if err := a.SetTruncated([]uint8{0, 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PolicyVersion(); err == nil {
		t.Fatal("a batch without a version gave one")
	}
	if err := a.SetPolicyVersion(7); err != nil {
		t.Fatal(err)
	}

	b, err := NewBatch(2, 4, []int64{1, 2, 3, 4, 1, 2, 5, 6}, nil, []uint8{0, 0, 1, 1, 0, 0, 1, 1}, []int64{5, 5})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, e := range []error{b.SetRolloutLogp(make([]float64, 8)), b.SetTruncated([]uint8{1, 1}), b.SetPolicyVersion(4)} {
		if e != nil {
			t.Fatal(e)
		}
	}
	c, err := ConcatBatches(a, b, a)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, tt, _ := c.Shape()
	groups, _ := c.GroupIDs()
	flags, _ := c.Truncated()
	v, _ := c.PolicyVersion()
	if n != 6 || tt != 4 || !equalI64(groups, []int64{0, 0, 1, 1, 2, 2}) || string(flags) != string([]uint8{0, 1, 1, 1, 0, 1}) || v != 4 {
		t.Fatalf("concat: n %d t %d groups %v truncated %v version %d", n, tt, groups, flags, v)
	}
	plain, _ := NewBatch(1, 2, []int64{1, 2}, nil, []uint8{0, 1}, []int64{0})
	defer plain.Close()
	_, err = ConcatBatches(a, plain)
	wantStatus(t, err, StatusInvalidArgument)

	p, err := SoftOverlongPenalty(18, 20, 4, 1)
	if err != nil || p != -0.5 {
		t.Fatalf("SoftOverlongPenalty(18, 20, 4, 1) = %v, %v", p, err)
	}
	_, err = SoftOverlongPenalty(3, 20, 0, 1)
	wantStatus(t, err, StatusInvalidArgument)
}
